//! A stateful connection's keeper: a copy of its resume state on another node, so that the connection outlives
//! the death of the node that runs it (docs/semantics.md, "A node's death and its stateful connections").
//!
//! The connection layer only reports, through the [`Keeper`] trait, what the copy needs: each record it numbers
//! (with its sequence id), the client's acks, the client's records it acknowledged, its groups, its end. Which
//! node keeps the copy and how it gets there is the node layer's.
//!
//! # Written once kept
//! A record is written to the client only once the keeper holds it ([`Held`]): the client numbers the records it
//! gets by counting them, so a node that resumes the connection must know every record the client may have; a
//! record written before its copy arrived could be one the client has and the keeper does not, and the keeper's
//! next record would then be taken for it. A connection with nobody to keep it (a cluster of one) marks each
//! record held at once.
//!
//! # Run once kept
//! The other way, a client's record (an invocation, a stream item, a completion, a cancel) runs only once the
//! keeper holds its receipt ([`Held::receipts_through`]): the client sends again, after a resume, every record the
//! server had not acknowledged to it, and only the keeper's count tells a node that takes the connection over
//! which of those already ran where it ran. Counting them at the Ack (once a second) made a dead node's last
//! calls run twice, and a user or a connection they sent to got those messages twice
//! (tests/cli/killed_node.rs). A receipt the keeper does not confirm within [`RECEIPT_WAIT`] lets the record run
//! anyway, counted. The price: a record whose receipt is held but whose sends had not left the node when it died
//! is not run at all (docs/semantics.md lists it); that window is the record's last moments on the node, where the
//! Ack's was a whole second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use super::SendMark;
#[cfg(doc)]
use super::moving::MovedState;
use crate::protocol::Protocol;

/// Where a stateful connection reports what its keeper copies. Calls must not block: they run on the connection
/// task (and on whichever task changes its groups).
pub trait Keeper: Send + Sync + 'static {
    /// The handshake turned stateful reconnect on, in `protocol`: the copy starts.
    fn opened(&self, protocol: Protocol);
    /// Record `id` (the next sequence id) was numbered; it is written once [`Held`] covers it. `mark`: where it
    /// stands in its group's order, for a group send's.
    fn record(&self, id: u64, record: &Bytes, mark: Option<&SendMark>);
    /// The client acknowledged every record up to `id`.
    fn acked(&self, id: u64);
    /// The connection is about to run the client's records up to `id`: it runs record `id` once
    /// [`Held::receipts_through`] covers it (see "Run once kept" above).
    fn received(&self, id: u64);
    /// The connection joined (`true`) or left a group (a named one, or its user's when `user`), before the change
    /// is confirmed to anyone.
    fn group(&self, group: &str, user: bool, joined: bool);
    /// The connection ended here, or moved (the node it moves to in a drain keeps it anew,
    /// [`MovedState::keep_epoch`]).
    fn ended(&self);
    /// The number of the latest copy sent to a keeper (0: none yet). A connection that moves carries it on, so
    /// that the numbers of its copies keep growing wherever it runs (docs/semantics.md, "One copy becomes the
    /// connection").
    fn epoch(&self) -> u64;
    /// Per origin, the last broadcast and the last send by id the copy knows were numbered for the client. A
    /// connection that moves carries them on, so that its next keeper's take-over gives it none of those again.
    fn last_marks(&self) -> LastMarks;
    /// How far the keeper holds the records.
    fn held(&self) -> &Held;
    /// Its node was declared dead by most of the cluster and is back: whether a keeper took the connection over
    /// (then it runs there, and its client resumes it there) or not (nor will one). Answered false at once when it
    /// has no keeper and left none.
    fn claim(&self) -> oneshot::Receiver<bool>;
}

/// Per origin node (name), the mark of the last broadcast and of the last send by id numbered for a stateful
/// connection: where a node that takes it over picks those sends up (one entry per origin name, a restarted
/// origin's replacing its earlier incarnation's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastMarks {
    /// The last broadcast of each origin.
    pub broadcasts: BTreeMap<String, SendMark>,
    /// The last send by id of each origin.
    pub directs: BTreeMap<String, SendMark>,
}

/// How long a connection whose node was declared dead waits for the peers it asked to say whether they took it
/// over ([`Keeper::claim`]). Long enough for links to come back (a claim that finds no link goes again): a peer
/// that declared this node dead takes its links again only once it sees it live, and redials after up to 2 s
/// (`DIAL_BACKOFF_MAX`); the answer of the one that took it over can come last (tests/declared_dead.rs met 3 s
/// running out in about one run in ten, the claim to the taker lost with the link).
pub const CLAIM_WAIT: Duration = Duration::from_secs(6);

/// The highest sequence id the keeper holds, and a wake-up for the connection task when it grows.
#[derive(Debug, Default)]
pub struct Held {
    through: AtomicU64,
    grew: Notify,
    receipts: AtomicU64,
    receipts_grew: Notify,
}

/// How long a client's record waits for its keeper to hold its receipt before it runs anyway: longer than a
/// keeper's answer takes on a loaded node, short of a client's patience with a call (a keeper that left makes
/// the copy go to another, whose answer covers the receipts).
pub const RECEIPT_WAIT: Duration = Duration::from_secs(2);

impl Held {
    /// Records up to `id` are held (a lower `id` than before changes nothing).
    pub fn advance(&self, id: u64) {
        if self.through.fetch_max(id, Ordering::AcqRel) < id {
            self.grew.notify_one();
        }
    }

    /// The highest record id held.
    pub fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }

    /// Waits until [`Held::advance`] raised the mark (at once if it did since the last wait).
    pub async fn grown(&self) {
        self.grew.notified().await;
    }

    /// The keeper holds the receipt of the client's records up to `id` (a lower `id` than before changes nothing).
    pub fn advance_receipts(&self, id: u64) {
        if self.receipts.fetch_max(id, Ordering::AcqRel) < id {
            self.receipts_grew.notify_one();
        }
    }

    /// The highest of the client's record ids whose receipt the keeper holds.
    pub fn receipts_through(&self) -> u64 {
        self.receipts.load(Ordering::Acquire)
    }

    /// Waits until the keeper holds the receipt of the client's record `id`, at most [`RECEIPT_WAIT`]; false if it
    /// did not by then. The connection task is its one waiter.
    pub async fn receipt(&self, id: u64) -> bool {
        let deadline = tokio::time::Instant::now() + RECEIPT_WAIT;
        while self.receipts_through() < id {
            if tokio::time::timeout_at(deadline, self.receipts_grew.notified()).await.is_err() {
                return self.receipts_through() >= id;
            }
        }
        true
    }
}
