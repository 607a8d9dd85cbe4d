//! The keeper's side of the copies servers send (`Keeping::keep`), without nodes: frames in, answers out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;

use super::wire::{Copy, Frame};
use super::Keeping;
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, RequestInfo};

/// A copy of connection `c1`, numbered `epoch`, with one record numbered.
fn copy(epoch: u64) -> Box<Copy> {
    let request = RequestInfo {
        user: None,
        claims: None,
        query: String::new(),
        headers: Default::default(),
    };
    let mut copy = Copy::empty(ConnectionId::from("c1"), "/hub", "token", NodeId::new("home", 1), &request);
    copy.last = 1;
    copy.epoch = epoch;
    Box::new(copy)
}

fn record(seq: u64) -> Frame {
    Frame::Record {
        id: ConnectionId::from("c1"),
        seq,
        payload: 0,
        mark: None,
    }
}

/// What `keeping` answers `from` for `frame`.
fn answer(keeping: &Keeping, from: &NodeId, frame: Frame) -> Option<Frame> {
    keeping.keep(from, frame, &[Bytes::from_static(b"r")], &mut Vec::new())
}

/// The live server's copy (its keeper took the connection over and kept it anew here) stays when a copy of the
/// same number comes late from the server it was taken from (cut off meanwhile): the late one is refused, and the
/// live server's records are still held. Before, the late copy replaced it and the live server's records were
/// ignored, never held, so never written to its client (tests/kept_after_move.rs, sends by id lost).
#[test]
fn a_late_copy_of_another_server_does_not_replace_a_fresher_or_equal_one() {
    let keeping = Keeping::default();
    let (live, cut_off) = (NodeId::new("keeper", 1), NodeId::new("server", 1));
    assert!(matches!(answer(&keeping, &live, Frame::Open(copy(4))), Some(Frame::Held { seq: 1, .. })));
    assert!(matches!(
        answer(&keeping, &cut_off, Frame::Open(copy(4))),
        Some(Frame::Refused { leaving: false, .. })
    ));
    assert!(matches!(
        answer(&keeping, &cut_off, Frame::Open(copy(3))),
        Some(Frame::Refused { leaving: false, .. })
    ));
    assert!(matches!(answer(&keeping, &live, record(2)), Some(Frame::Held { seq: 2, .. })));
    // A fresher one replaces it (the connection moved on, and its new server kept it here).
    let moved_on = NodeId::new("next", 1);
    assert!(matches!(answer(&keeping, &moved_on, Frame::Open(copy(5))), Some(Frame::Held { seq: 1, .. })));
    assert!(answer(&keeping, &live, record(3)).is_none(), "the copy is the new server's now");
    // The same server sends its copy again at any number (it lost the keeping link a while).
    assert!(matches!(answer(&keeping, &moved_on, Frame::Open(copy(5))), Some(Frame::Held { .. })));
}

/// A client's record runs once its keeper holds its receipt (`src/connection/keeper.rs`, "Run once kept"): the
/// keeper counts the receipts of its copy's server and answers each, and ignores another server's.
#[test]
fn a_keeper_holds_and_answers_the_receipts_of_its_copys_server_only() {
    let keeping = Keeping::default();
    let (server, other) = (NodeId::new("server", 1), NodeId::new("other", 1));
    assert!(matches!(answer(&keeping, &server, Frame::Open(copy(1))), Some(Frame::Held { seq: 1, .. })));
    let received = |seq| Frame::Received {
        id: ConnectionId::from("c1"),
        seq,
    };
    assert!(matches!(answer(&keeping, &server, received(3)), Some(Frame::ReceivedHeld { seq: 3, .. })));
    assert!(answer(&keeping, &other, received(5)).is_none(), "not the copy's server");
    // A late, lower receipt lowers nothing.
    assert!(matches!(answer(&keeping, &server, received(2)), Some(Frame::ReceivedHeld { seq: 2, .. })));
    let kept = keeping.kept.lock();
    assert_eq!(kept.copies.get(&ConnectionId::from("c1")).map(|(_, copy)| copy.received), Some(3));
}
