//! The sends an owner accepted while it had declared a node dead reach that node's members once it is back
//! (`mesh/missed.rs`): the owner's side with one router fed link events by hand, and the member node's side with a
//! hub that records what its members got.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::test_router::{frame, owned_by, owner_node, snapshot, until, RecordingLinks, TestHub};
use super::Router;
use crate::cluster::NodeId;
use crate::connection::SharedFrame;

fn payload(seq: u64) -> Arc<SharedFrame> {
    SharedFrame::pre_encoded(Some(Bytes::from(format!("{{\"s\":{seq}}}\x1e"))), None)
}

fn stamp(origin: &NodeId, seq: u64) -> Stamp {
    Stamp {
        origin: origin.clone(),
        seq,
        prev: seq - 1,
    }
}

fn group_send(key: &GroupKey, origin: &NodeId, seq: u64) -> Envelope {
    Envelope::GroupSend {
        key: key.clone(),
        except: Vec::new(),
        frame: WireFrame::of(&payload(seq)),
        stamp: stamp(origin, seq),
    }
}

/// The sequence numbers of the `GroupMissed` sends of group `key` that went to `peer`, in order.
fn missed_to(links: &RecordingLinks, peer: &str, key: &GroupKey) -> Vec<u64> {
    links
        .envelopes()
        .into_iter()
        .filter_map(|(to, envelope)| match envelope {
            Envelope::GroupMissed { key: sent, stamp, .. } if to == peer && &sent == key => Some(stamp.seq),
            _ => None,
        })
        .collect()
}

/// The four-node cluster of chaos defect 12 (`tests/cli/chaos/README.md`), seen by the owner n5: it declares n3
/// dead while n3's members are in its group, accepts two sends, and sees n3 again (`back`: the same incarnation,
/// or a restarted one). Returns the links, the group, and n3's incarnation as it was.
async fn owner_that_declared_n3_dead(back: u64) -> (Arc<RecordingLinks>, GroupKey, NodeId) {
    let (one, two, three, five) = (
        NodeId::new("n1", 7),
        NodeId::new("n2", 7),
        NodeId::new("n3", 7),
        NodeId::new("n5", 9),
    );
    let full = vec![one.clone(), two.clone(), three.clone(), five.clone()];
    let without_three = vec![one.clone(), two.clone(), five.clone()];
    let returned = NodeId::new("n3", back);
    let again = vec![one.clone(), two.clone(), returned.clone(), five.clone()];
    let key = owned_by(&five, &[&full, &without_three]);
    let (router, links, hub) = owner_node(&five);
    router.on_view(full.clone());
    for (node, member) in [(&one, "a.n1"), (&two, "b.n2"), (&three, "c.n3")] {
        router.on_link_event(frame(node, &snapshot(&key, member)));
    }
    tokio::time::sleep(Duration::from_secs(12)).await;

    // n5 alone declares n3 dead (a cut shorter than failure detection for the others): n3 is not told.
    router.on_view(without_three);
    for (node, member) in [(&one, "a.n1"), (&two, "b.n2")] {
        router.on_link_event(frame(node, &snapshot(&key, member)));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for seq in [1, 2] {
        router.on_link_event(frame(&one, &group_send(&key, &one, seq)));
    }
    until(|| links.deliveries_of(&key).len() >= 4).await;
    let mut reached = links.deliveries_of(&key);
    reached.sort();
    assert_eq!(reached, vec!["n1", "n1", "n2", "n2"], "the sends went without n3");

    // n3 is back: its snapshot gives the group its member again.
    router.on_view(again);
    for (node, member) in [(&one, "a.n1"), (&two, "b.n2"), (&returned, "c.n3")] {
        router.on_link_event(frame(node, &snapshot(&key, member)));
    }
    router.on_link_event(frame(&one, &group_send(&key, &one, 3)));
    until(|| links.deliveries_of(&key).len() >= 7).await;
    drop(hub);
    (links, key, three)
}

/// Chaos defect 12: the sends an owner fanned out while it alone had declared a node dead reach that node when it
/// is back, in order, ahead of the sends that reach it again as a member node.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_owner_sends_a_node_it_sees_again_the_sends_it_missed() {
    let (links, key, _) = owner_that_declared_n3_dead(7).await;
    assert_eq!(missed_to(&links, "n3", &key), vec![1, 2]);
    for peer in ["n1", "n2"] {
        assert_eq!(missed_to(&links, peer, &key), Vec::<u64>::new(), "{peer} got its sends");
    }
    // The missed ones went before the next send's delivery to n3, its first.
    let to_three: Vec<&'static str> = links
        .envelopes()
        .into_iter()
        .filter_map(|(to, envelope)| match envelope {
            Envelope::GroupMissed { .. } if to == "n3" => Some("missed"),
            Envelope::GroupDeliver { .. } if to == "n3" => Some("deliver"),
            _ => None,
        })
        .collect();
    assert_eq!(to_three, vec!["missed", "missed", "deliver"]);
}

/// A restarted node is a new incarnation with no members of the old one: it gets nothing of what the old one
/// missed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restarted_node_gets_nothing_its_earlier_life_missed() {
    let (links, key, _) = owner_that_declared_n3_dead(8).await;
    assert_eq!(missed_to(&links, "n3", &key), Vec::<u64>::new());
}

fn delivery(key: &GroupKey, origin: &NodeId, seq: u64, missed: bool) -> Envelope {
    let (key, except, frame, stamp) = (key.clone(), Vec::new(), WireFrame::of(&payload(seq)), stamp(origin, seq));
    if missed {
        Envelope::GroupMissed {
            key,
            except,
            frame,
            stamp,
        }
    } else {
        Envelope::GroupDeliver {
            key,
            except,
            frame,
            stamp,
            handed_from: None,
        }
    }
}

/// At the member node: a missed send fills the gap a later send waits at, once, and nothing reaches a group whose
/// members never got that origin's sends (they joined later) or from another incarnation of the origin.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_node_takes_a_missed_send_only_where_it_follows_the_origin() {
    let (three, five, one) = (NodeId::new("n3", 7), NodeId::new("n5", 9), NodeId::new("n1", 7));
    let router: Arc<Router<TestHub>> =
        Router::new(&three.name, tokio::runtime::Handle::current(), tracing::Span::none());
    let hub = Arc::new(TestHub::with_members());
    router.register_hub("hub", &hub);
    router.attach_links(Arc::new(RecordingLinks::default()), &three);
    router.on_view(vec![one.clone(), three.clone(), five.clone()]);
    let (followed, joined_later) = (GroupKey::named("hub", "a"), GroupKey::named("hub", "b"));

    router.on_link_event(frame(&five, &delivery(&followed, &one, 1, false)));
    // Sends 2 and 3 went without this node; 4 waits for them.
    router.on_link_event(frame(&five, &delivery(&followed, &one, 4, false)));
    for seq in [2, 3, 3] {
        router.on_link_event(frame(&five, &delivery(&followed, &one, seq, true)));
    }
    router.on_link_event(frame(&five, &delivery(&joined_later, &one, 7, true)));
    router.on_link_event(frame(&five, &delivery(&followed, &NodeId::new("n1", 8), 5, true)));

    let got: Vec<(String, String)> = hub
        .got
        .lock()
        .iter()
        .map(|(group, bytes)| (group.clone(), String::from_utf8_lossy(bytes).into_owned()))
        .collect();
    let expected: Vec<(String, String)> = [1, 2, 3, 4]
        .into_iter()
        .map(|seq| ("a".to_string(), format!("{{\"s\":{seq}}}\x1e")))
        .collect();
    assert_eq!(got, expected);
}
